"""Face models: model cards, the dlib converter, the MTCNN detector stages, the model build."""
