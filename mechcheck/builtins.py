"""The built-in plugin: importing it registers every built-in task, recipe, experiment, unit, check and figure.

It is loaded exactly as a third-party plugin is (see `mechcheck.registry.load_builtins`), so a plugin can do
anything the built-ins do: a module that registers entries with the same decorators when it is imported.
"""

import mechcheck.checks.ablation  # noqa: F401
import mechcheck.checks.behaviour  # noqa: F401
import mechcheck.checks.circuits  # noqa: F401
import mechcheck.checks.dcm  # noqa: F401
import mechcheck.checks.decoding  # noqa: F401
import mechcheck.checks.efficiency  # noqa: F401
import mechcheck.checks.geometry  # noqa: F401
import mechcheck.checks.layers  # noqa: F401
import mechcheck.checks.learning  # noqa: F401
import mechcheck.checks.probes  # noqa: F401
import mechcheck.checks.pruning  # noqa: F401
import mechcheck.experiments.circuits  # noqa: F401
import mechcheck.experiments.dcm  # noqa: F401
import mechcheck.experiments.decoding  # noqa: F401
import mechcheck.experiments.evaluate  # noqa: F401
import mechcheck.experiments.geometry  # noqa: F401
import mechcheck.experiments.head_ablation  # noqa: F401
import mechcheck.experiments.learning  # noqa: F401
import mechcheck.experiments.pruning  # noqa: F401
import mechcheck.experiments.sample_efficiency  # noqa: F401
import mechcheck.recipes  # noqa: F401
import mechcheck.report.figures.ablation  # noqa: F401
import mechcheck.report.figures.circuits  # noqa: F401
import mechcheck.report.figures.decoding  # noqa: F401
import mechcheck.report.figures.efficiency  # noqa: F401
import mechcheck.report.figures.evaluate  # noqa: F401
import mechcheck.report.figures.geometry  # noqa: F401
import mechcheck.report.figures.learning  # noqa: F401
import mechcheck.report.figures.pruning  # noqa: F401
import mechcheck.tasks.cdm  # noqa: F401
import mechcheck.tasks.corpus  # noqa: F401
import mechcheck.tasks.entity  # noqa: F401
import mechcheck.tasks.pcfg  # noqa: F401
import mechcheck.tasks.toy  # noqa: F401
