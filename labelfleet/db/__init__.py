"""Database: SQLAlchemy 2 models, engine helpers, repository functions, migrations."""
