// The comparison peer "Express + ws": the original pattern wschat started from. The token is
// read with URLSearchParams, a wrong one gets ws.close(), every text message goes to every
// client, the sender included.
//
// Usage: node server.js PORT TOKEN
const http = require("http");
const express = require("express");
const WebSocket = require("ws");

const port = Number(process.argv[2] || 3002);
const secret = process.argv[3] || "mysecrettoken123";

const app = express();
const server = http.createServer(app);
const wss = new WebSocket.Server({ server });

wss.on("connection", (ws, req) => {
  const token = new URL(req.url, "http://localhost").searchParams.get("token");
  if (token !== secret) {
    ws.close();
    return;
  }
  ws.on("message", (data, isBinary) => {
    if (isBinary) return;
    const text = data.toString();
    for (const client of wss.clients) {
      if (client.readyState === WebSocket.OPEN) client.send(text);
    }
  });
});

server.listen(port, "127.0.0.1", () => {
  console.log(`peer listening on ws://127.0.0.1:${server.address().port}`);
});
