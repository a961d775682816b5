"""Where our nnU-Net trainers live and whether nnU-Net's own lookup finds them.

nnU-Net (>= 2.8) searches folders listed in ``nnUNet_extTrainer`` (os.pathsep separated) after its own
package and imports each module there under its bare name. Our trainers are installed as the folder of the
``nnunet_mamba_trainers`` package, but are imported only that one way: through nnU-Net's lookup
(:func:`load_trainer`), never as ``nnunet_mamba_trainers.<module>``. The files there declare leaf classes
only; everything they share lives in :mod:`nnunet_mamba.training`.
"""
from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import os
import shlex
from pathlib import Path

EXT_TRAINER_ENV_VAR = "nnUNet_extTrainer"


def trainers_folder() -> Path:
    """The folder holding our trainer modules: the installed package, else the source tree's ``trainers/``."""
    spec = importlib.util.find_spec("nnunet_mamba_trainers")  # located, not imported
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]).resolve()
    source_tree = Path(__file__).resolve().parent.parent / "trainers"
    if source_tree.is_dir():
        return source_tree
    raise RuntimeError("cannot find the nnunet-mamba trainers folder: reinstall with `pip install nnunet-mamba`")


def _configured_paths(value: str | None = None) -> list[str]:
    value = os.environ.get(EXT_TRAINER_ENV_VAR, "") if value is None else value
    return [p for p in value.split(os.pathsep) if p.strip()]


def is_configured() -> bool:
    """True when ``nnUNet_extTrainer`` lists our trainers folder."""
    ours = trainers_folder()
    return any(Path(p).resolve() == ours for p in _configured_paths() if os.path.exists(p))


def export_line() -> str:
    """The shell line that makes nnU-Net find our trainers, keeping other folders already listed."""
    ours = str(trainers_folder())
    paths = [ours] + [p for p in _configured_paths() if os.path.exists(p) and Path(p).resolve() != Path(ours)]
    return f"export {EXT_TRAINER_ENV_VAR}={shlex.quote(os.pathsep.join(paths))}"


def require_configured(command: str) -> None:
    """Raise a clear error when nnU-Net could not find our trainers from ``command``."""
    if is_configured():
        return
    current = os.environ.get(EXT_TRAINER_ENV_VAR)
    state = "is not set" if current is None else f"is {current!r}, which does not list {trainers_folder()}"
    raise RuntimeError(
        f"{command} needs nnU-Net to find the nnunet-mamba trainers, but {EXT_TRAINER_ENV_VAR} {state}.\n"
        f"Run this (or add it to your shell profile):\n    eval \"$(nnunet-mamba env)\"\n"
        f"which executes: {export_line()}")


def trainer_names() -> list[str]:
    """Names of the trainer classes defined in our trainers folder (read from source, nothing imported)."""
    names = []
    for module in sorted(trainers_folder().glob("*.py")):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        names += [node.name for node in tree.body if isinstance(node, ast.ClassDef) and node.name.startswith("nnUNetTrainer")]
    return names


def find_with_nnunet(trainer_name: str):
    """Look ``trainer_name`` up exactly as nnUNetv2_train/_predict do; returns (class or None, error text)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):
            return recursive_find_trainer_class_by_name(trainer_name), ""
    except Exception as error:  # nnU-Net raises RuntimeError; an import failure of a module raises anything
        return None, f"{type(error).__name__}: {error}"


def load_trainer(trainer_name: str):
    """The trainer class as nnUNetv2_train finds it; a RuntimeError with the fix when it cannot be found."""
    trainer, error = find_with_nnunet(trainer_name)
    if trainer is None:
        raise RuntimeError(f"nnU-Net cannot find trainer {trainer_name!r} ({error}). Run "
                           f"`eval \"$(nnunet-mamba env)\"` and check with `nnunet-mamba doctor`.")
    return trainer


def our_trainers() -> dict:
    """Every trainer class of our folder, loaded the way nnU-Net loads it (bare module names), by name."""
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    folder = str(trainers_folder())
    found = {}
    with contextlib.redirect_stdout(io.StringIO()):
        for name in trainer_names():
            found[name] = recursive_find_python_class(folder, name, None, base_folder=folder,
                                                      cleanup_imports_from_base_folder=True)
    return found


def trainer_for_network(network_name: str) -> str | None:
    """The plain trainer of a registered name (trainer variants add to the trainer's name, so the shortest name
    whose ``network_name`` is it, or which builds it: a quick trainer its network's small instance); None when none
    of our trainers builds it or a trainer module fails to import."""
    try:
        trainers = our_trainers()
    except Exception:  # noqa: BLE001 - used in hints and error messages, which must not fail on another module
        return None

    def builds(trainer) -> set:
        to_build = getattr(trainer, "network_to_build", None)
        return {getattr(trainer, "network_name", None), to_build() if to_build and trainer.network_name else None}

    names = [name for name, trainer in trainers.items() if network_name in builds(trainer)]
    return min(names, key=len) if names else None
