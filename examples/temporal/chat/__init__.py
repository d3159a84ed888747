"""A chat backend: FastAPI stores each message in PostgreSQL and a Temporal workflow has the model answer it."""
