// @norskvideo/webrtc-client's WhepClient: video + audio transceivers, the
// offer POSTed before setLocalDescription (so without candidates), trickle by
// PATCH. It makes a (muted) video element in its container only once a video
// track has come with the audio; for audio alone it keeps the track as
// outputAudioTrack, which a page plays itself (here: an <audio>). It has no
// stop and no auth: stop() closes its RTCPeerConnection (client.client), so
// no DELETE is sent.
import { WhepClient } from '@norskvideo/webrtc-client';
import { expose, mediaElement } from './common.js';

expose('norsk', async (url, token, report) => {
  const container = document.createElement('div');
  document.body.appendChild(container);
  const client = new WhepClient({ url, container, iceServers: [] });
  const audio = mediaElement('audio');
  client.addEventListener('responseerror', (e) => report(`responseerror ${e.detail.status}`));
  client.client.addEventListener('track', (evt) => {
    if (evt.track.kind === 'audio') audio.srcObject = new MediaStream([evt.track]);
  });
  await client.start();
  return {
    player: client,
    get element() { return container.querySelector('video') || audio; },
    stream: () => (container.querySelector('video') || audio).srcObject,
    pc: () => client.client,
    stop: async () => client.client.close(),
  };
});
