from lazarus_lite.cli import app

app()
