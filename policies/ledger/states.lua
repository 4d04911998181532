-- states: KEYS = {C1..Cn}. Reply: {spent1, reserved1, ...} after purging expired reservations.
local now = now_ms()
for _, c in ipairs(KEYS) do
  purge(c, now)
end
return append_states({}, KEYS)
