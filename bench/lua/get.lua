-- Workload 1: the same GET over and over (URL and headers from the wrk command line).
-- A static request: wrk builds it once, so the load generator does the least work.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

function setup(thread)
   register(thread)
end

function done(summary, latency, requests)
   report(summary, latency)
end
