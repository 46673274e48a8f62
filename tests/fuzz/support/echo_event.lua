-- echo_event.lua -- the hook of the fuzz target fuzz_event_json: hands the event
-- back as it received it, so every accepted body goes into the sandbox and out.
return function(event)
  return event
end
