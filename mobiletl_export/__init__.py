"""mobiletl-export: compile MobileTL on-device training of MobileNets into ONNX Runtime training artifacts."""

__version__ = "0.1.0"
