/* The handout's features.feature_matrix for one raw row, in float32 exactly as numpy computes it.
 *
 * Appended to the generated trees by service/compiled.py, so one call computes the features and
 * the margin of a row (numpy spends ~10 array operations on a single row). Each line mirrors one
 * numpy expression: every operation rounds to float32 (numpy 2 casts a Python float operand to
 * the array's float32 first, so do the (float) casts; -ffp-contract=off forbids fused
 * multiply-adds), in the same order. features.py belongs to the data-science team and may change:
 * the service compares these features with feature_matrix's, bit for bit, at every start and uses
 * this path only when they agree (service/model.py).
 */

/* raw: Sex (1 male, 0 female), Age, Height, Weight, Duration, Heart_Rate, Body_Temp. */
static void features_row(const float *raw, float *x) {
  const float sex = raw[0], age = raw[1], height = raw[2], weight = raw[3];
  const float duration = raw[4], hr = raw[5];
  for (int i = 0; i < 7; i++) x[i] = raw[i];
  const float h = height / (float)100.0;
  x[7] = weight / (h * h); /* (height / 100.0) ** 2: numpy squares by multiplying */
  const float male = (float)0.6309 * hr + (float)0.09036 * weight + (float)0.2017 * age
                     - (float)55.0969;
  const float female = (float)0.4472 * hr - (float)0.05741 * weight + (float)0.074 * age
                       - (float)20.4022;
  x[8] = duration * hr;
  x[9] = duration * (sex >= (float)0.5 ? male : female) / (float)4.184;
}

/* Features of n raw rows (the start-up check compares them with feature_matrix's). */
void features_rows(const float *raw, long n, float *out) {
  for (long r = 0; r < n; r++) features_row(raw + r * 7, out + r * 10);
}

/* The margin of one raw row: its features, then the trees. */
float predict_row(const float *raw) {
  float x[10];
  features_row(raw, x);
  return margin(x);
}
