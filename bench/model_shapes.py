"""The model shapes every benchmark here runs: configs/models.json, the presets of `tmoe bench`."""
import json
import os

MODELS_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "models.json")


def routed_models():
    """name -> E, H, I, k and routing of the routed experts. The shared expert (shared_I) is
    left out: the peers compared have none."""
    with open(MODELS_FILE) as f:
        presets = json.load(f)
    return {name: {key: value for key, value in shape.items() if key != "shared_I"}
            for name, shape in presets.items() if not name.startswith("_")}
