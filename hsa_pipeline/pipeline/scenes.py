"""Scene seeds of the simulators (the touch world, gym-aloha's tasks): demonstrations take
even seeds, evaluation rollouts odd ones, so no evaluation scene was ever demonstrated."""


def scene_seed(split: str, seed: int, index: int) -> int:
    """The seed of scene `index` of `split` ("train" or "eval") under base `seed`."""
    return 2 * (seed * 1_000_003 + index) + (1 if split == "eval" else 0)
