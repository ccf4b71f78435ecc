"""mechcheck: pytest for mechanistic hypotheses.

A claim file names models and data (fixtures), runs one experiment on them, and checks expectations on the
result with statistics. The command line (`mechcheck run | validate | ls`) and the pytest plugin are the
usual entry points; the names below are the public Python API.
"""

from mechcheck.errors import ClaimSkipped, SpecError, SpecErrors
from mechcheck.registry import CHECKS, EXPERIMENTS, RECIPES, TASKS, Param
from mechcheck.results import SCHEMA_VERSION, CheckResult, ClaimResult, Estimate, RunReport

__all__ = [
    "CHECKS",
    "EXPERIMENTS",
    "RECIPES",
    "SCHEMA_VERSION",
    "TASKS",
    "CheckResult",
    "ClaimResult",
    "ClaimSkipped",
    "Estimate",
    "Param",
    "RunReport",
    "SpecError",
    "SpecErrors",
    "__version__",
]
__version__ = "0.1.0"
