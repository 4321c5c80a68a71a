"""Triton Inference Server: launching a real server (development, tests) and repository helpers.

The python-backend models themselves are in ``earshot.triton.models`` and are imported only
by ``model_repo/*/1/model.py`` inside Triton's stub.
"""
