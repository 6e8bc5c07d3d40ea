"""Submitting training to clusters (AzureML: ``megatron.cluster.azureml``; its SDK is an optional extra)."""
