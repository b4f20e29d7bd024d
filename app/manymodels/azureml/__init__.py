"""Azure Machine Learning online endpoints in front of manymodels (docs/azureml.md): the catalog Azure ML
mounts (``model_dir``) and the forwarding mode of a Kubernetes online deployment (``forward``)."""
