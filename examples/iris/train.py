"""Train the iris classifier and pickle it to model.pkl (run once; the pickle is committed).

    uv run --with scikit-learn==1.7.2 python train.py
"""

import pickle

from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

iris = load_iris()
model = LogisticRegression(max_iter=500).fit(iris.data, iris.target)
with open("model.pkl", "wb") as f:
    pickle.dump({"model": model, "names": list(iris.target_names)}, f)
print("accuracy on the training set:", model.score(iris.data, iris.target))
