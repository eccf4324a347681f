"""A SQLite tracking store that was moved or copied: its artifacts follow the database.

MLflow records artifact locations as absolute paths: ``create_experiment`` resolves a relative
location against the working directory (``SqlAlchemyStore.create_experiment`` ->
``mlflow.utils.uri.resolve_uri_if_local``), and every run copies its experiment's location into its
own ``artifact_uri`` when it is created. A copied ``runs/`` therefore reads and writes artifacts in
the folder it was copied from. raysearch keeps a store's artifacts beside its database
(``<folder>/mlartifacts``); `follow_moved_store` rewrites the recorded ``<old folder>/mlartifacts``
to the database's present folder, in every table that holds an artifact location. Writing commands
(a search, ``optimize``) do it when they open the store; ``python -m raysearch.tracking.relocate
runs/mlflow.db`` does it at once (before ``mlflow ui`` on a moved store, say).
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

ARTIFACTS = "mlartifacts"  # a store's artifacts: beside its database
#: (table, column, extra condition) of every artifact location MLflow 3.x keeps in its database
LOCATIONS = (("experiments", "artifact_location", ""), ("runs", "artifact_uri", ""),
             ("logged_models", "artifact_location", ""), ("model_versions", "source", ""),
             ("model_versions", "storage_location", ""),
             ("trace_tags", "value", "AND key = 'mlflow.artifactLocation'"))


def artifact_root(db: Path) -> str:
    """Where raysearch puts a SQLite store's artifacts: ``<its folder>/mlartifacts``, as a file URI."""
    return (db.parent / ARTIFACTS).resolve().as_uri()


def _path(uri: str) -> Path | None:
    u = urlparse(uri)
    return Path(unquote(u.path)) if u.scheme == "file" else None


def recorded_roots(db: Path) -> list[str]:
    """The ``<folder>/mlartifacts`` locations of the store's experiments that are not beside it now."""
    here = artifact_root(db)
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)) as con:
        found = {row[0] for row in con.execute("SELECT DISTINCT artifact_location FROM experiments")}
    roots = []
    for loc in sorted(found):
        path = _path(loc or "")
        if path is not None and path.name == ARTIFACTS and loc.rstrip("/") != here:
            roots.append(loc.rstrip("/"))
    return roots


def rebase(db: Path, old: str, new: str) -> int:
    """Rewrite every artifact location under ``old`` (a file URI, or the same as a plain path) to
    the same place under ``new``, in one transaction; the number of values changed."""
    old_path, new_path = _path(old), _path(new)
    pairs = [(old, new)] + ([(str(old_path), str(new_path))] if old_path and new_path else [])
    changed = 0
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con, con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, column, extra in LOCATIONS:
            if table not in tables or column not in {r[1] for r in con.execute(f"PRAGMA table_info({table})")}:
                continue  # an older schema
            for a, b in pairs:
                cur = con.execute(
                    f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608 (names are ours)
                    f"WHERE ({column} = ? OR substr({column}, 1, ?) = ?) {extra}",
                    (b, len(a) + 1, a, len(a) + 1, a + "/"))
                changed += cur.rowcount
    return changed


def _forget_artifact_repos() -> None:
    """MLflow keeps each run's artifact repository for the life of the process (keyed by run id,
    ``mlflow.tracking._tracking_service.utils._artifact_repos_cache``): after a rewrite, one made
    before it would still write to the old folder."""
    try:
        from mlflow.tracking._tracking_service import utils

        utils._artifact_repos_cache.clear()
    except (ImportError, AttributeError):  # another MLflow: nothing cached there, or cached elsewhere
        pass


def follow_moved_store(uri: str) -> list[str]:
    """For a SQLite store whose experiments keep their artifacts in another folder's
    ``mlartifacts`` (the store was moved or copied there): point them at this folder's, when its
    artifacts came along (or the old folder is gone). Returns one line per location it rewrote or
    left (the store was copied without its artifacts, which are still in the old folder)."""
    from raysearch.tracking.store import sqlite_path

    db = sqlite_path(uri)
    if db is None or not db.is_file():
        return []
    here = artifact_root(db)
    said = []
    for old in recorded_roots(db):
        old_dir, new_dir = _path(old), _path(here)
        assert old_dir is not None and new_dir is not None
        if old_dir.exists() and not new_dir.exists():
            said.append(f"the tracking store {db} keeps its artifacts in {old_dir} (it was copied without them); "
                        f"copy that folder to {new_dir} for the copy to keep its own")
            continue
        n = rebase(db, old, here)
        _forget_artifact_repos()
        said.append(f"the tracking store {db} was moved: its artifacts are now read and written in {new_dir} "
                    f"(was {old_dir}; {n} locations rewritten)")
    return said


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m raysearch.tracking.relocate PATH/mlflow.db   (after moving or copying the store's "
              "folder, with its mlartifacts/)", file=sys.stderr)
        return 2
    db = Path(args[0]).resolve()
    if not db.is_file():
        print(f"no tracking store at {db}", file=sys.stderr)
        return 1
    lines = follow_moved_store(f"sqlite:///{db}")
    print("\n".join(lines) or f"{db}: its artifacts are already in {_path(artifact_root(db))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
