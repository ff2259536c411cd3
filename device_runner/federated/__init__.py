"""Federated MobileTL with Flower (`flwr`): many devices train one model without sharing their images.

Only the export's trainable tensors travel (manifest["portable"]["parameters"]: the top-k region's BN shifts,
the classifier, ...); the frozen backbone stays in the export on every device. Flower does the transport,
the sampling and the aggregation; this package is the glue to our runner:

    payload.py    trainable tensors <-> Flower ArrayRecord, checked against the manifest (names, shapes, finite)
    partition.py  which samples a simulated client holds (flwr-datasets' IID / Dirichlet partitioners)
    client.py     the ClientApp: local epochs of device_runner.train.Run (portable step, plain onnxruntime)
    server.py     the ServerApp: Flower's FedAvg / FedAdam, refusal of other exports, central evaluation,
                  and the final run folder (model.onnx with class names, like mobiletl-train's)

The Flower App (pyproject.toml with its run config) is the repository's `federated/` folder; README
"Federated" has the commands for the simulation engine and for real SuperLink / SuperNode processes.
"""
