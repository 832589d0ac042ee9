"""Evaluation: metrics over the reference packages -> the evaluate stage -> the HTML report."""
