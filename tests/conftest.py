"""Shared test fixtures: an isolated model cache, the known-answer checkpoint, and claim-tree writers.

Test tiers (markers): unmarked tests are fast unit tests without trained models; `slow` tests train or
sweep tiny models (seconds to a minute each); `network` tests need the Hugging Face hub and are skipped
cleanly where it cannot be reached. `make test` runs them all.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Never let tests read or write the user's model cache."""
    old = os.environ.get("MECHCHECK_CACHE_DIR")
    os.environ["MECHCHECK_CACHE_DIR"] = str(tmp_path_factory.mktemp("mechcheck-cache"))
    yield
    if old is None:
        os.environ.pop("MECHCHECK_CACHE_DIR", None)
    else:
        os.environ["MECHCHECK_CACHE_DIR"] = old


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    network = [i for i in items if i.get_closest_marker("network")]
    if not network:
        return
    from mechcheck.models import hub_reachable

    if not hub_reachable():
        skip = pytest.mark.skip(reason="the Hugging Face hub cannot be reached from this machine")
        for item in network:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module: what the engine's workers use, and on a shared 2-core machine tiny
    models ran many times slower with two (an ablation sweep 30x)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def known_answer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face directory holding `single_head_copy_model` (only L0H0 carries the answer)."""
    from mechcheck.known_answer import save_single_head_copy_model

    return save_single_head_copy_model(tmp_path_factory.mktemp("known-answer") / "model")


@pytest.fixture(scope="session")
def wrapper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face directory holding `wrapper_model` (noised, so every neuron has a score): a copy capability
    hidden under the one MLP neuron `WRAPPER_NEURON`."""
    from mechcheck.known_answer import wrapper_model

    path = tmp_path_factory.mktemp("wrapper") / "model"
    wrapper_model(6, noise=0.02, seed=3).save_pretrained(path, safe_serialization=True)
    return path


#: the wrapper's task (the source to copy; `answer: primed` is what the wrapper makes it answer)
WRAPPED_TASK = """
    name: copy6-wrapped
    generator: copy_wrapped
    args: {length: 6, answer: source}
"""


def write(root: Path, rel: str, text: str) -> Path:
    """Write dedented `text` to root/rel (creating folders) and return the path."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def write_fixtures(root: Path, known_answer_dir: Path) -> None:
    """fixtures/ of the test projects: tasks `copy6` and `cdm9`; models `one-head` (load of the known-answer
    checkpoint) and `tiny-cdm` (a 2x2, d=32 scratch model that trains 30 steps in a few seconds: too short to
    learn the task, long enough to test the machinery)."""
    write(root, "fixtures/tasks/copy6.yaml", """
        name: copy6
        generator: copy_first
        args: {length: 6}
    """)
    write(root, "fixtures/models/one-head.yaml", f"""
        name: one-head
        recipe: load
        path: {known_answer_dir}
        task: copy6
    """)
    write(root, "fixtures/tasks/cdm9.yaml", """
        name: cdm9
        generator: cdm
        args: {vocab: words, max_number: 9}
    """)
    write(root, "fixtures/models/tiny-cdm.yaml", """
        name: tiny-cdm
        recipe: scratch
        architecture: {n_layer: 2, n_head: 2, n_embd: 32}
        task: cdm9
        train: {steps: 30, batch_size: 32, lr: 3.0e-3, eval_every: 10}
    """)


@pytest.fixture
def claim_tree(tmp_path: Path, known_answer_dir: Path):
    """A project with the `write_fixtures` fixtures; returns a writer of claims.

    Usage: ``path = claim_tree("claims/x.yaml", yaml_text)``; ``claim_tree.root`` is the project folder.
    """
    write_fixtures(tmp_path, known_answer_dir)

    def add(rel: str, text: str) -> Path:
        return write(tmp_path, rel, text)

    add.root = tmp_path
    return add


KNOWN_HEAD_PASSES = """
    id: known.head_matters
    statement: In the hand-built model, head L0H0 is the only path for the answer.
    models: {m: one-head}
    data: {task: copy6, n: 200}
    experiment: {head_ablation: {method: zero}}
    expect:
      - accuracy_at_least: {model: m, value: 0.95}
      - effect_at_least: {model: m, heads: [[0, 0]], value: 0.3}
      - top_heads_in_layers: {model: m, top: 1, layers: [0]}
"""

UNUSED_HEAD_FAILS = """
    id: known.unused_head_matters
    statement: (false) head L0H1, which reads the answer but writes nothing, matters.
    models: {m: one-head}
    data: {task: copy6, n: 200}
    experiment: {head_ablation: {method: zero}}
    expect:
      - effect_at_least: {model: m, heads: [[0, 1]], value: 0.05}
"""
