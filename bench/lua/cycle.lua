-- Workload 3: the sync cycle, one wrk thread per connection so that each connection
-- has its own state and its own namespace (or WebDAV folder):
--   oxsync: GET <ns>/metadata, PUT <ns>/blob (If-Match: etag from that metadata, or
--           If-None-Match: * when there is none), GET <ns>/blob
--   dav:    GET <dir>/latest.json, PUT <dir>/latest.oxide, GET <dir>/latest.oxide
-- wrk -t C -c C ... URL -- <oxsync|dav> <prefix> <blob bytes> <Authorization or "-">
-- The namespace / folder of thread t is <prefix><t>. A 412 is counted as a conflict.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

function setup(thread)
   register(thread)
end

function init(args)
   mode = args[1]
   local base = args[2] .. tid
   body = string.rep("\171", tonumber(args[3]))  -- opaque bytes, like a sealed snapshot
   auth = args[4] ~= "-" and args[4] or nil
   if mode == "oxsync" then
      first_path, blob_path = base .. "/metadata", base .. "/blob"
   else
      first_path, blob_path = base .. "/latest.json", base .. "/latest.oxide"
   end
   step, etag, revision = 0, nil, 0
   cycles, conflicts, failures = 0, 0, 0
   cycle_us = {}
end

local function with_auth(headers)
   if auth then headers["Authorization"] = auth end
   return headers
end

-- request() only reads the state; response() moves it on. (wrk calls request() once
-- more than it sends, to inspect it, so request() must not change anything.)
function request()
   if step == 0 then
      if now_us then started = now_us() end
      return wrk.format("GET", first_path, with_auth({}))
   elseif step == 1 then
      local headers = with_auth({["Content-Type"] = "application/vnd.oxideterm.oxide"})
      if mode == "oxsync" then
         headers["X-OxideTerm-Revision"] = "bench-" .. tid .. "-" .. revision
         headers["X-OxideTerm-Device-Id"] = "bench-device-" .. tid
         if etag then headers["If-Match"] = etag else headers["If-None-Match"] = "*" end
      end
      return wrk.format("PUT", blob_path, headers, body)
   else
      return wrk.format("GET", blob_path, with_auth({}))
   end
end

function response(status, headers, response_body)
   if step == 0 then
      if status ~= 200 then failures = failures + 1 end
      if mode == "oxsync" then
         etag = response_body:match('"etag"%s*:%s*"([^"]*)"')
      end
      step = 1
   elseif step == 1 then
      revision = revision + 1
      if status == 412 then
         conflicts = conflicts + 1
      elseif status >= 300 then
         failures = failures + 1
      end
      step = 2
   else
      if status == 200 then
         cycles = cycles + 1
         if now_us and started then table.insert(cycle_us, now_us() - started) end
      else
         failures = failures + 1
      end
      step = 0
   end
end

function done(summary, latency, requests)
   report(summary, latency, {"cycles", "conflicts", "failures"}, "cycle_us")
end
