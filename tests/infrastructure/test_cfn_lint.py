"""cfn-lint finds no errors and no unexplained warnings in any synthesized template, in any region."""

from __future__ import annotations

import pytest
from cfnlint.api import lint_all
from synth_helpers import Synth

pytestmark = pytest.mark.slow  # full synths, then cfn-lint across every region (~2 s a template)

# W3005 (DependsOn already implied by a Ref/GetAtt): CDK adds an explicit DependsOn on the role's
# policy-bearing resources on purpose, so the redundancy is the framework's, not a defect.
ALLOWED = {"W3005"}
# Informational (I*) matches are not findings: I1022 prefers Fn::Sub over CDK's Fn::Join style,
# I4010 asks for optional architecture-context metadata.


@pytest.mark.parametrize("variant", ["default_synth", "api_key_synth", "http_synth", "jwt_synth"])
def test_template_has_no_errors_or_warnings(variant: str, request: pytest.FixtureRequest) -> None:
    synth: Synth = request.getfixturevalue(variant)
    templates = sorted(synth.outdir.glob("*.template.json"))
    assert templates, f"no template in {synth.outdir}"
    for template in templates:
        matches = lint_all(template.read_text())
        problems = [f"{m.rule.id} {m.message} ({template.name}:{m.linenumber})" for m in matches
                    if m.rule.id[0] in "EW" and m.rule.id not in ALLOWED]
        assert problems == []
