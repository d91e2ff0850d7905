"""The ChArUco calibration board: its size, markers and texture (`hsa calibrate` detects
it; the touch world renders it for the calibration tests)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BoardSpec:
    """A ChArUco board: squares across and down, square and marker sides (m), dictionary."""

    squares_x: int = 5
    squares_y: int = 4
    square_m: float = 0.04
    marker_m: float = 0.03
    dictionary: str = "DICT_4X4_50"

    @classmethod
    def parse(cls, text: str) -> "BoardSpec":
        """'5x4,0.04,0.03,DICT_4X4_50' -> BoardSpec."""
        try:
            grid, square, marker, *rest = text.split(",")
            sx, sy = (int(v) for v in grid.lower().split("x"))
            return cls(sx, sy, float(square), float(marker), rest[0] if rest else "DICT_4X4_50")
        except ValueError:
            raise ValueError(f"board '{text}': expected SQUARESxSQUARES,SQUARE_M,MARKER_M[,DICTIONARY], "
                             f"e.g. 5x4,0.04,0.03,DICT_4X4_50") from None

    @property
    def size_m(self) -> tuple[float, float]:
        return self.squares_x * self.square_m, self.squares_y * self.square_m

    def board(self):
        import cv2

        if not hasattr(cv2.aruco, self.dictionary):
            raise ValueError(f"board dictionary '{self.dictionary}' is not an OpenCV ArUco dictionary")
        d = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        return cv2.aruco.CharucoBoard((self.squares_x, self.squares_y), self.square_m, self.marker_m, d)

    def texture(self, px_per_square: int = 80) -> np.ndarray:
        """The printed board, (H, W, 3) uint8: pixel (u, v) is board point (u, v) / px_per_m."""
        img = self.board().generateImage((self.squares_x * px_per_square, self.squares_y * px_per_square), marginSize=0)
        return np.repeat(img[..., None], 3, axis=2)

    def corners_world(self, T_world_board: np.ndarray) -> np.ndarray:
        """(4, 3) outer corners of the board in the world, in texture order."""
        w, h = self.size_m
        local = np.array([[0, 0, 0, 1], [w, 0, 0, 1], [w, h, 0, 1], [0, h, 0, 1]], dtype=float)
        return (local @ T_world_board.T)[:, :3]
