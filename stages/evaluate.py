"""Stage: scores of the generated test pairs (image metrics, region colours, predicted parsing), the report, MLflow."""

from casd.config import run_stage
from casd.evaluation.evaluate import run_from_params

if __name__ == "__main__":
    run_stage(run_from_params)
