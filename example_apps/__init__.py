"""Example chat apps (FastAPI, Flask, Django) that record every conversation as one session.

`make demo` runs the FastAPI one against the local Freeplay server; see `README.md` here.
"""
