from sweeper.cli import app

app()
