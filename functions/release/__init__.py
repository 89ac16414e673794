"""Model releases: canary stages, comparison with the champion, promotion or rollback."""
