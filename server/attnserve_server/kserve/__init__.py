"""The KServe v2 / Open Inference Protocol (``inference.GRPCInferenceService``) over the attnserve handlers."""
