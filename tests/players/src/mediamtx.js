// mediamtx-webrtc-react's plain reader (MediaMTXWebRTCReader, MediaMTX's own
// reader.js in TypeScript): video + audio transceivers, trickle by PATCH.
// The package's entry imports React for its hooks and components, so React
// is bundled (and tree-shaken away). close() only closes the peer
// connection: the reader sends no DELETE.
import { MediaMTXWebRTCReader } from 'mediamtx-webrtc-react';
import { expose, mediaElement } from './common.js';

expose('mediamtx', async (url, token, report) => {
  const video = mediaElement('video');
  const reader = new MediaMTXWebRTCReader({
    url, token,
    onError: (err) => report(`error: ${err}`),
    // what MediaMTX's own page does with it
    onTrack: (evt) => { video.srcObject = evt.streams[0]; },
  });
  return {
    player: reader, element: video,
    stream: () => video.srcObject,
    pc: () => reader.peerConnection,
    stop: async () => reader.close(),
  };
});
