"""Domain code of the order saga, shared by every function through the SagaLayer."""
