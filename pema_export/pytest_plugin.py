"""pytest plugin (entry point ``pytest11``): size budgets in an app team's own test suite.

    def test_model_size(pema_bundle):
        pema_bundle("build/model.onnx").assert_within("pema-budget.toml")

    @pytest.mark.pema_budget("build/model.onnx", budget="pema-budget.toml", baseline="baseline.json", tolerance="2%")
    def test_bundle_budget():
        pass
"""

from __future__ import annotations

from pathlib import Path

import pytest


class BundleUnderTest:
    def __init__(self, path: str | Path):
        path = Path(path)
        self.bundle_dir = path.parent if path.suffix in (".onnx", ".ort") or path.is_file() else path

    @property
    def report(self):
        from pema_export.size import bundle_report

        return bundle_report(self.bundle_dir)

    def violations(self, budget=None, baseline=None, tolerance: str | float = 0.0) -> list[str]:
        from pema_export.budget import check_bundle, load_baseline, load_budget, parse_tolerance

        return check_bundle(
            self.report,
            load_budget(budget) if budget else None,
            load_baseline(baseline) if baseline else None,
            parse_tolerance(tolerance) if isinstance(tolerance, str) else tolerance,
        )

    def assert_within(self, budget=None, baseline=None, tolerance: str | float = 0.0) -> None:
        from pema_export.errors import PemaError

        try:
            violations = self.violations(budget, baseline, tolerance)
        except PemaError as exc:  # a missing, half-written or mixed bundle, a bad budget: one line, as on the CLI
            pytest.fail(f"pema-export: {exc}", pytrace=False)
        if violations:
            pytest.fail(f"bundle {self.bundle_dir} is over budget:\n" + "\n".join(violations), pytrace=False)


@pytest.fixture
def pema_bundle():
    """``pema_bundle(path)``: a bundle (its folder, or any file in it) to check against a budget."""
    return BundleUnderTest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "pema_budget(bundle, budget=None, baseline=None, tolerance='0%'): fail the test when the bundle is over budget"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield  # a failing test body raises here, and its own failure is what the user sees
    marker = item.get_closest_marker("pema_budget")
    if marker is not None:
        bundle = marker.args[0] if marker.args else marker.kwargs["bundle"]
        options = {key: marker.kwargs[key] for key in ("budget", "baseline", "tolerance") if key in marker.kwargs}
        BundleUnderTest(bundle).assert_within(**options)
    return result
