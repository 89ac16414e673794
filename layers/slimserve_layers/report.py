"""The build's summary on the terminal (the report file holds everything)."""

from __future__ import annotations

import sys
from typing import Any


def print_summary(report: dict[str, Any], top: int = 10) -> None:
    size, trim_info = report["size"], report["trim"]
    print(f"\nslimserve {report.get('recipe', 'runtime')} layer ({report['arch']}, "
          f"python{report['python_version']}): {report['layer']}")
    print("  installed: " + ", ".join(f"{k}=={v}" for k, v in report["installed"].items()))
    print(f"  before trim {trim_info['before_mib']:.2f} MiB; trimmed {trim_info['removed_mib']:.2f} MiB:")
    for rule, info in trim_info["by_rule"].items():
        print(f"    {rule:<26} {info['mib']:>7.2f} MiB  ({info['entries']} entries)")
    for pattern, evidence in trim_info["conditional"].items():
        print(f"    {pattern}: removed {evidence['removed'] or 'nothing'}; kept {evidence['kept'] or 'nothing'}")
    print(f"  unzipped {size['unzipped_mib']:.2f} MiB ({size['files']} files, "
          f"{size['lambda_limit_share']:.0%} of Lambda's 250 MB); zipped {size['zipped_mib']:.2f} MiB")
    print(f"  largest distributions (top {top}):")
    for entry in size["by_distribution"][:top]:
        print(f"    {entry['name']:<24} {entry['mib']:>7.2f} MiB")
    if "combined" in size:
        combined = size["combined"]
        parts = " + ".join(f"{k} {v:.2f}" for k, v in combined["parts_mib"].items())
        print(f"  combined unzipped (MiB): {parts} = {combined['total_mib']:.2f} of Lambda's "
              f"{combined['limit_mib']:.0f} ({combined['limit_bytes']} bytes): {combined['share']:.0%}, "
              f"{combined['headroom_mib']:.2f} MiB left")
    test = report["import_test"]
    if test["status"] == "skipped":
        print(f"  {test['reason']}")
    else:
        print(f"  import test {test['status'].upper()} with {test.get('python')} ({test.get('seconds', '?')} s)")
        for name, check in test.get("checks", {}).items():
            mark = "ok " if check["ok"] else "FAIL"
            print(f"    [{mark}] {name}" + (f": {check.get('detail')}" if check.get("detail") else "")
                  + (f": {check['error']}" if not check["ok"] else ""))
        if test.get("timings_ms"):
            cache = "with" if report["bytecode"] else "no"
            print(f"    timings (ms, {cache} bytecode cache): "
                  + ", ".join(f"{k} {v}" for k, v in test["timings_ms"].items()))
        if test.get("modules_from"):
            print(f"    from the runtime stand-in: {test['modules_from']['runtime']}; "
                  f"from elsewhere: {test['modules_from']['elsewhere'] or 'nothing'}")
        if report.get("recipe", "runtime") != "runtime" and test.get("loaded_libraries"):
            for root, libraries in test["loaded_libraries"].items():
                print(f"    shared objects loaded from {root}: {', '.join(libraries)}")
        if test["status"] == "failed":
            for check in test.get("checks", {}).values():
                if not check["ok"]:
                    print(check.get("traceback", ""), file=sys.stderr)
            if test.get("stderr"):
                print(test["stderr"], file=sys.stderr)
    print("  timings (s): " + ", ".join(f"{k} {v}" for k, v in report["timings_s"].items()))
    for warning in report["warnings"]:
        print(f"  WARNING: {warning}")
    for problem in report["problems"]:
        print(f"  PROBLEM: {problem}", file=sys.stderr)
    print(f"  report: {report['report_path']}")
