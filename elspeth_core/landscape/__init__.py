"""The landscape: the audit database. The only package that imports SQLAlchemy (and Alembic)."""

from elspeth_core.landscape.database import LandscapeDB
from elspeth_core.landscape.queries import LandscapeQueries
from elspeth_core.landscape.recorder import LandscapeRecorder

__all__ = ["LandscapeDB", "LandscapeQueries", "LandscapeRecorder"]
