"""Stage: SSIM / PSNR / LPIPS / FID of the generated test pairs, the HTML report, MLflow (see casd/evaluation/evaluate.py)."""

from casd.config import run_stage
from casd.evaluation.evaluate import run_from_params

if __name__ == "__main__":
    run_stage(run_from_params)
