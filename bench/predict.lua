-- wrk: POST /predict with a fresh id per request (each is a new prediction event).
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local fmt = '{"id": %d, "Sex": "male", "Age": 68, "Height": 190.0, "Weight": 94.0, ' ..
            '"Duration": 29, "Heart_Rate": 105.0, "Body_Temp": 40.8}'

request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, string.format(fmt, counter))
end
