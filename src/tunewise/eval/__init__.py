"""Evaluation: graders, the harness, statistics, reports and human ratings."""
