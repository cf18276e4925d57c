-- Workload 2: PUT a body of N bytes to a new path each time.
-- wrk ... URL -- <path prefix> <body bytes> <Authorization header value or "-">
-- Paths are <prefix>t<thread>-<n>.json, so no two requests write the same name.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

function setup(thread)
   register(thread)
end

function init(args)
   prefix = args[1]
   local size = tonumber(args[2])
   local head = '{"kind":"bench","pad":"'
   body = head .. string.rep("x", size - #head - 2) .. '"}'
   headers = {["Content-Type"] = "application/json"}
   if args[3] and args[3] ~= "-" then headers["Authorization"] = args[3] end
   n = 0
end

function request()
   n = n + 1
   return wrk.format("PUT", prefix .. "t" .. tid .. "-" .. n .. ".json", headers, body)
end

function done(summary, latency, requests)
   report(summary, latency)
end
