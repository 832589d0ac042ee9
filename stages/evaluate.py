"""Stage: scores of the generated test pairs (image metrics, region colours, predicted parsing), the report, MLflow."""

from casd.stages import main

if __name__ == "__main__":
    main("evaluate")
