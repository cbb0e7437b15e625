-- wrk: predictions and their labels, as a service with late labels sees them. Odd requests POST
-- /predict with a fresh id; even ones POST /feedback for the prediction made 33 requests earlier.
-- wrk keeps at most one request per connection in flight, so with up to 32 connections that
-- prediction has been answered and stored: every label joins (the path quality monitoring adds to).
local counter, back = 0, 33
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local predict = '{"id": %d, "Sex": "male", "Age": 68, "Height": 190.0, "Weight": 94.0, ' ..
                '"Duration": 29, "Heart_Rate": 105.0, "Body_Temp": 40.8}'
local label = '{"id": %d, "Calories": 231.0}'

request = function()
  counter = counter + 1
  local target = counter - back
  if counter % 2 == 1 or target < 1 then
    return wrk.format(nil, "/predict", nil, string.format(predict, counter))
  end
  return wrk.format(nil, "/feedback", nil, string.format(label, target))
end
