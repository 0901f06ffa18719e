"""What happens to an Evaluation once it exists: results files, figures and W&B panels.

Reporters receive the finished ``scoring.evaluation.Evaluation`` and a ``ReportContext`` from the
evaluation callback; none of them scores anything or reads another component's internals.
"""
