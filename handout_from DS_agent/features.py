"""Feature engineering for the calories model: a custom scikit-learn transformer and its numpy core."""

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

RAW_COLUMNS = ["Sex", "Age", "Height", "Weight", "Duration", "Heart_Rate", "Body_Temp"]
DERIVED_COLUMNS = ["BMI", "Duration_x_HR", "Keytel_kcal"]
FEATURE_NAMES = RAW_COLUMNS + DERIVED_COLUMNS
SEX_CODES = {"male": 1.0, "female": 0.0}


def feature_matrix(raw):
    """Map raw rows (Sex coded 1.0 male / 0.0 female, then the numeric columns) to model features."""
    raw = np.asarray(raw, dtype=np.float32)
    sex, age, height, weight, duration, hr = (raw[:, i] for i in range(6))
    bmi = weight / (height / 100.0) ** 2
    # Keytel et al. (2005): kJ/min from heart rate, weight and age, per sex; kcal over the session.
    male = 0.6309 * hr + 0.09036 * weight + 0.2017 * age - 55.0969
    female = 0.4472 * hr - 0.05741 * weight + 0.074 * age - 20.4022
    keytel = duration * np.where(sex >= 0.5, male, female) / 4.184
    out = np.empty((raw.shape[0], len(FEATURE_NAMES)), dtype=np.float32)
    out[:, :7] = raw[:, :7]
    out[:, 7] = bmi
    out[:, 8] = duration * hr
    out[:, 9] = keytel
    return out


def encode_frame(frame):
    """Turn a DataFrame with the raw columns into the raw float32 array feature_matrix expects."""
    sex = frame["Sex"].map(SEX_CODES)
    if sex.isna().any():
        raise ValueError("Sex must be 'male' or 'female'")
    raw = frame[RAW_COLUMNS].copy()
    raw["Sex"] = sex
    return raw.to_numpy(dtype=np.float32)


class CalorieFeatures(BaseEstimator, TransformerMixin):
    """Adds BMI, Duration x Heart_Rate and a Keytel-equation estimate to the raw features."""

    def fit(self, X, y=None):
        """Stateless: nothing to learn."""
        self.n_features_in_ = len(RAW_COLUMNS)
        return self

    def transform(self, X):
        """Return the float32 feature matrix for a DataFrame of raw records."""
        return feature_matrix(encode_frame(X))

    def get_feature_names_out(self, input_features=None):
        """Names of the produced columns."""
        return np.asarray(FEATURE_NAMES, dtype=object)
