"""The files of a model bundle (results/bundle/model/): written by export, read by predict, named
in the model card and the handover README."""

BUNDLE_FORMAT = 1
MODEL_FILE = "model.pt2"
META_FILE = "bundle.json"
DRIFT_FILE = "drift_reference.json"
CARD_FILE = "MODEL_CARD.md"
MANIFEST_FILE = "manifest.json"
BUNDLE_FILES = (MODEL_FILE, META_FILE, DRIFT_FILE, CARD_FILE, MANIFEST_FILE)
