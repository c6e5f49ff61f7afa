"""Entry point: `python evaluate.py [overrides]` composes configs/evaluate.yaml, runs its task."""

import hydra
from omegaconf import DictConfig

from sake.utils.resolvers import register_resolvers
from sake.utils.run import run_task_for_user

register_resolvers()


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_task_for_user(cfg)


if __name__ == "__main__":
    main()
