// The publish page: an interpreter's microphone into a whip source over WHIP
// (POST /api/whip/<source> with the source's publish token as the bearer).
// The token comes in the link's fragment (#token=…, never sent in a request)
// and is dropped from the address bar; the microphone is asked for only after
// a tap on Start.

const section = document.getElementById("publish");
const source = section.dataset.source;
const state = document.getElementById("state");
const startButton = document.getElementById("start");
const stopButton = document.getElementById("stop");
const tokenInput = document.getElementById("token");
const bar = document.querySelector("#meter span");

let token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
if (token) history.replaceState(null, "", location.pathname + location.search);
else document.getElementById("token-row").hidden = false;

let pc = null, stream = null, resource = null, audio = null, metering = 0;

function show(name, text) {
  state.dataset.state = name;
  state.textContent = text;
}

// The microphone's peak level, drawn about 30 times a second.
function meter(mic) {
  audio = new AudioContext();
  const analyser = audio.createAnalyser();
  analyser.fftSize = 1024;
  audio.createMediaStreamSource(mic).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  const draw = () => {
    analyser.getFloatTimeDomainData(samples);
    let peak = 0;
    for (const v of samples) peak = Math.max(peak, Math.abs(v));
    const dbfs = peak > 0 ? 20 * Math.log10(peak) : -120;
    bar.style.width = `${Math.max(0, Math.min(100, (dbfs + 60) / 60 * 100))}%`;
    section.dataset.peakDbfs = dbfs.toFixed(1);
    metering = requestAnimationFrame(draw);
  };
  draw();
}

async function start() {
  token = token || tokenInput.value.trim();
  if (!token) { show("error", "Enter the publish token first."); return; }
  startButton.disabled = true;
  const speech = document.getElementById("speech").checked;
  try {
    show("connecting", "Asking for the microphone…");
    stream = await navigator.mediaDevices.getUserMedia({ audio: {
      echoCancellation: speech, noiseSuppression: speech, autoGainControl: speech,
      channelCount: { ideal: 2 } } });
    meter(stream);
    pc = new RTCPeerConnection({ iceServers: [] });
    pc.addTransceiver(stream.getAudioTracks()[0], { direction: "sendonly", streams: [stream] });
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "connected") show("live", "On air");
      else if (pc.connectionState === "failed") { show("error", "The connection failed."); stop(false); }
    };
    await pc.setLocalDescription(await pc.createOffer());
    show("connecting", "Connecting…");
    const r = await fetch(`/api/whip/${encodeURIComponent(source)}`, { method: "POST",
      headers: { "Content-Type": "application/sdp", "Authorization": `Bearer ${token}` },
      body: pc.localDescription.sdp });
    if (r.status !== 201) throw new Error(`${r.status}: ${await r.text()}`);
    resource = r.headers.get("Location");
    await pc.setRemoteDescription({ type: "answer", sdp: await r.text() });
    stopButton.disabled = false;
  } catch (error) {
    show("error", `Not publishing: ${error.message || error}`);
    stop(false);
  }
}

function stop(goodbye = true) {
  if (goodbye && resource) fetch(resource, { method: "DELETE", keepalive: true }).catch(() => {});
  resource = null;
  if (pc) pc.close();
  pc = null;
  if (stream) stream.getTracks().forEach((track) => track.stop());
  stream = null;
  cancelAnimationFrame(metering);
  if (audio) audio.close();
  audio = null;
  bar.style.width = "0";
  startButton.disabled = false;
  stopButton.disabled = true;
  if (goodbye) show("idle", "Not publishing");
}

startButton.addEventListener("click", start);
stopButton.addEventListener("click", () => stop(true));
addEventListener("pagehide", () => stop(true));
window.applianceDebug = { state: () => state.dataset.state };
