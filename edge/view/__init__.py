"""edge-view: the operator's live page, a subscriber of the publisher like any other client."""
