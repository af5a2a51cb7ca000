"""Plugins: a user's own workloads, optimizers and suites, and where every name comes from.

A plugin is a ``.py`` file or an importable module that registers things when
imported (``register_workload``, ``register_bench_optimizer``, ``register_suite``).
``polyak bench ... --plugin FILE.py`` (repeatable) and ``$POLYAK_BENCH_PLUGINS``
(comma separated, how sweep workers receive them) load plugins; each is imported
once per process.

Safety, because a plugin is code that changes results:

- Provenance: :func:`loaded_plugins` gives each plugin's absolute path and the
  sha256 of its source; every record carries that list, and each name a plugin
  registered is attributed to it (:func:`source_of`), so a record says which file
  (and which version of it) made its workload or optimizer.
- Collisions: the built-in workloads are registered before any plugin runs, so
  a plugin name that collides with a built-in (or with another plugin) fails in
  the plugin's own registration, with an error naming both sources; two plugin
  files with the same file name are refused (their records would be confused).
- Names: :func:`check_name` (lower case, digits, ``-_.+``) where things are registered.
- Errors: a plugin that cannot be found or fails to import raises
  :class:`PluginError` with one line that says what to do.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Union

__all__ = ["PLUGINS_ENV", "Plugin", "PluginError", "load_plugins", "loaded_plugins", "check_name",
           "current_plugin", "registration_source", "source_of", "remember_source", "fingerprint",
           "trial_provenance", "changes_since"]

#: Plugins (dotted module names or .py paths, comma separated) imported before workloads
#: and optimizers are looked up, in this process and in sweep workers.
PLUGINS_ENV = "POLYAK_BENCH_PLUGINS"

_NAME = re.compile(r"^[a-z0-9][a-z0-9._+-]*$")


class PluginError(ImportError):
    """A plugin cannot be found or fails to import; the message is one line with the fix."""


@dataclass(frozen=True)
class Plugin:
    """A loaded plugin: what the user wrote (``entry``), the file imported and its sha256."""

    entry: str
    path: str
    sha256: str
    module: str

    def to_dict(self) -> Dict[str, str]:
        return {"entry": self.entry, "path": self.path, "sha256": self.sha256}


_LOADED: Dict[str, Plugin] = {}          # entry -> plugin
_BY_MODULE_NAME: Dict[str, Plugin] = {}  # module name of a file plugin -> plugin (same-name check)
_CURRENT: List[Plugin] = []              # plugins being imported (innermost last)
#: (kind, name) -> where it was registered: a plugin path or a module name
_SOURCES: Dict[tuple, str] = {}
_FILE_SHA256: Dict[str, str] = {}  # path -> sha256 of a non-plugin registering module, read once
_POLYAK_DIR = Path(__file__).resolve().parents[1]  # src/polyak: built-ins live here


def check_name(kind: str, name: object) -> str:
    """``name`` if it is a valid registry key, else ValueError saying why and what to use."""
    if not isinstance(name, str) or not _NAME.match(name):
        suggestion = re.sub(r"[^a-z0-9._+-]+", "-", str(name).lower()).strip("-") or "my-name"
        raise ValueError(
            f"{kind} name {name!r} is not valid: use lower-case letters, digits and -_.+ "
            f"(starting with a letter or digit), e.g. {suggestion!r}; the CLI and the records use these names"
        )
    return name


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def current_plugin() -> Optional[Plugin]:
    """The plugin being imported right now (None outside a plugin import)."""
    return _CURRENT[-1] if _CURRENT else None


def registration_source(caller: Mapping[str, object]) -> str:
    """Where a registration happening now comes from, given the globals of the module
    that called the register function: the plugin file being imported; else that
    module's file when it lies outside polyak (a user's module, a test), so that it is
    fingerprinted like a plugin; else the module's name (polyak's built-ins: the git
    SHA in the record covers them)."""
    plugin = current_plugin()
    if plugin is not None:
        return plugin.path
    module, file = caller.get("__name__"), caller.get("__file__")
    if isinstance(file, str) and not Path(file).resolve().is_relative_to(_POLYAK_DIR):
        return str(Path(file).resolve())
    return str(module or "<unknown>")


def remember_source(kind: str, name: str, source: str) -> None:
    _SOURCES[(kind, name)] = source


def source_of(kind: str, name: str) -> Optional[str]:
    """Where workload/optimizer/suite ``name`` was registered (a plugin path or a module name)."""
    return _SOURCES.get((kind, name))


def fingerprint(kind: str, name: str) -> Dict[str, Optional[str]]:
    """``{"source": ..., "sha256": ...}`` of a registered name: the sha256 of the
    file that registered it (a plugin, or a user's module outside polyak), None for
    polyak's built-ins (the git SHA in the record covers those)."""
    source = source_of(kind, name)
    plugin = next((p for p in _LOADED.values() if p.path == source), None)
    if plugin is not None:
        return {"source": source, "sha256": plugin.sha256}
    if source is not None and source.endswith(".py") and os.path.isfile(source):
        if source not in _FILE_SHA256:
            _FILE_SHA256[source] = _sha256(Path(source))
        return {"source": source, "sha256": _FILE_SHA256[source]}
    return {"source": source, "sha256": None}


def loaded_plugins() -> List[Dict[str, str]]:
    """Every plugin loaded in this process, in load order, as ``{"entry", "path", "sha256"}``
    (a file named twice, e.g. by a relative and an absolute path, once)."""
    unique: Dict[str, Plugin] = {}
    for plugin in _LOADED.values():
        unique.setdefault(plugin.path, plugin)
    return [plugin.to_dict() for plugin in unique.values()]


@contextlib.contextmanager
def _importing(plugin: Plugin) -> Iterator[None]:
    _CURRENT.append(plugin)
    try:
        yield
    finally:
        _CURRENT.pop()


def _failure(entry: str, origin: str, path: Path, error: BaseException) -> PluginError:
    """One line: the plugin, the exception, the plugin's own line where it happened."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename) == path]
    where = f" (line {frames[-1].lineno} of {frames[-1].filename})" if frames else ""
    return PluginError(f"plugin {entry!r} (from {origin}) failed while importing: "
                       f"{type(error).__name__}: {error}{where}; fix it, or leave it out of {origin}")


def _load_file(entry: str, origin: str) -> Plugin:
    path = Path(entry).expanduser()
    if not path.is_file():
        raise PluginError(f"{origin}: plugin file {entry!r} does not exist (looked for {path.resolve()}); "
                          "give the path of a .py file that registers workloads or optimizers")
    path = path.resolve()
    module_name = f"_polyak_bench_plugin_{re.sub(r'[^0-9a-zA-Z_]', '_', path.stem)}"
    other = _BY_MODULE_NAME.get(module_name)
    if other is not None and other.path != str(path):
        raise PluginError(f"{origin}: plugin files {other.path} and {path} have the same file name {path.name!r}; "
                          "rename one (records and workers tell plugins apart by file name)")
    plugin = Plugin(entry, str(path), _sha256(path), module_name)
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            with _importing(plugin):
                spec.loader.exec_module(module)
        except PluginError:
            del sys.modules[module_name]
            raise
        except Exception as error:
            del sys.modules[module_name]
            raise _failure(entry, origin, path, error) from error
    _BY_MODULE_NAME[module_name] = plugin
    return plugin


def _spelled(origin: str, value) -> str:
    """How the user would write ``value`` where the entry came from."""
    return f"{PLUGINS_ENV}={value}" if PLUGINS_ENV in origin else f"{origin} {value}"


def _load_module(entry: str, origin: str) -> Plugin:
    try:
        spec = importlib.util.find_spec(entry)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None or not os.path.isfile(spec.origin):
        as_file = Path(f"{entry}.py")
        hint = (f"did you mean the file: {_spelled(origin, as_file)}?" if as_file.is_file()
                else f"give a .py file ({_spelled(origin, 'path/to/' + entry.split('.')[-1] + '.py')}) "
                     "or a module on PYTHONPATH")
        raise PluginError(f"{origin}: plugin {entry!r} is not an importable module; {hint}")
    path = Path(spec.origin).resolve()
    plugin = Plugin(entry, str(path), _sha256(path), entry)
    if entry not in sys.modules:
        try:
            with _importing(plugin):
                importlib.import_module(entry)
        except PluginError:
            raise
        except Exception as error:
            sys.modules.pop(entry, None)
            raise _failure(entry, origin, path, error) from error
    return plugin


def load_plugins(entries: Union[None, str, Sequence[str]] = None, *, origin: Optional[str] = None) -> List[str]:
    """Import plugins (default: the entries of ``$POLYAK_BENCH_PLUGINS``); returns the newly loaded entries.

    An entry is a ``.py`` path or a dotted module name. ``origin`` names where the
    entries came from in error messages ("--plugin", the environment variable).
    The built-in workloads are registered first, so that a plugin's collision
    with one is reported at the plugin's own registration.
    """
    from .workloads import _load_all  # noqa: F401  (built-ins first: collisions blame the plugin)

    if entries is None:
        entries, origin = os.environ.get(PLUGINS_ENV, ""), origin or f"${PLUGINS_ENV}"
    if isinstance(entries, str):
        entries = entries.split(",")
    origin = origin or "--plugin"
    loaded = []
    for entry in (str(e).strip() for e in entries):
        if not entry or entry in _LOADED:
            continue
        plugin = _load_file(entry, origin) if entry.endswith(".py") else _load_module(entry, origin)
        _LOADED[entry] = plugin
        loaded.append(entry)
    return loaded


# ------------------------------------------------------------ provenance
def trial_provenance(workload: str, optimizer: str) -> Dict[str, Dict[str, object]]:
    """What a trial's results depend on beyond its config and polyak's git SHA:
    where its workload and optimizer come from (with the plugin file's sha256)
    and the optimizer record's defaults (which the config does not name)."""
    from .optimizers import optimizer_info
    from .records import json_safe

    info = optimizer_info(optimizer)
    opt = fingerprint("optimizer", info.name)
    if opt["source"] is None:
        opt["source"] = info.source
    return {"workload": fingerprint("workload", workload),
            "optimizer": {**opt, "defaults": json_safe(dict(info.spec.defaults))}}


def changes_since(record: Dict[str, object]) -> List[str]:
    """How a finished record's provenance differs from what the same config would
    use now (empty: resuming may reuse it). Records written before provenance was
    recorded are compared on the optimizer arguments they hold."""
    config = record["config"]
    then = record.get("provenance") or {}
    now = trial_provenance(config["workload"], config["optimizer"])
    changes = []
    for kind in ("workload", "optimizer"):
        old, new = then.get(kind) or {}, now[kind]
        if old.get("sha256") is None and new["sha256"] is None:
            continue  # built-in both times: the git SHA tells versions apart
        if (old.get("source"), old.get("sha256")) != (new["source"], new["sha256"]):
            was = f"{old.get('source')} sha256 {str(old.get('sha256'))[:12]}" if old else "no plugin fingerprint"
            changes.append(f"{kind} {config[kind]!r} now comes from {new['source']} sha256 {str(new['sha256'])[:12]}, "
                           f"the record from {was}")
    chosen = set((config.get("hyperparameters") or {}))
    recorded = ((record.get("optimizer") or {}).get("arguments") or {})
    old_defaults = (then.get("optimizer") or {}).get("defaults")
    for key, value in sorted(now["optimizer"]["defaults"].items()):
        if key in chosen:
            continue
        before = (old_defaults if old_defaults is not None else recorded).get(key, "<absent>")
        if before != value:
            changes.append(f"optimizer {config['optimizer']!r} default {key}={value!r}, the record used {before!r}")
    for key in sorted(set(old_defaults or ()) - set(now["optimizer"]["defaults"]) - chosen):
        changes.append(f"optimizer {config['optimizer']!r} no longer has the default {key}={old_defaults[key]!r}")
    return changes
