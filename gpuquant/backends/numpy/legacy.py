"""(in progress) numpy quantizers: registers nothing yet."""

QUANTIZERS: dict = {}
DEQUANTIZERS: dict = {}
