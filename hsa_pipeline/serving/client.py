"""The client side of `hsa serve`: a served policy where rollout code expects a `Policy`
(`hsa rollout --server`, `eval.server`), through openpi's own client."""

from __future__ import annotations

import numpy as np

from ..errors import UserError


class RemotePolicy:
    """A served policy where rollout code expects a `Policy`: the touch world driven through
    the server with openpi's own client. It ensembles on the client (sending ensemble:
    false), exactly as the in-process rollout does."""

    def __init__(self, uri: str, api_key: str | None = None):
        try:
            from openpi_client.websocket_client_policy import WebsocketClientPolicy
        except ImportError:
            raise UserError("driving a served policy needs openpi-client: pip install --no-deps openpi-client==0.1.2 "
                            "(its numpy<2 pin is metadata only; `make install` does this)") from None
        try:
            self.client = WebsocketClientPolicy(uri, api_key=api_key)
        except OSError as e:
            raise UserError(f"{uri}: no policy server answers ({e}); start one with `hsa serve`") from None
        meta = self.client.get_server_metadata()
        self.meta = {**meta, "shapes": {k: meta[k] for k in ("qpos_dim", "action_dim")}}  # as Policy.meta has them
        self.streams = list(self.meta["streams"])
        self.chunk_size = int(self.meta["chunk_size"])

    def features(self, images: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {s: images[s] for s in self.streams}  # the server encodes

    def predict_chunk(self, images, qpos, tokens=None) -> np.ndarray:
        obs = {**(tokens if tokens is not None else self.features(images)), "qpos": np.asarray(qpos, np.float64),
               "ensemble": False}
        try:
            return np.asarray(self.client.infer(obs)["actions"])
        except RuntimeError as e:  # the server's text answer: the observation's problem, in its words
            raise UserError(str(e).replace("Error in inference server:\n", "")) from None
