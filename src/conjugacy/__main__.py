from conjugacy.cli import run

run()
