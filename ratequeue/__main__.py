from ratequeue.cli import app

app()
