// AudioWorklet for the latency benchmark and tests: reports the frame at
// which a click (a short burst after silence) starts in the decoded audio.
class ClickProbe extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.threshold = o.threshold ?? 0.05;
    this.holdFrames = Math.round((o.holdMs ?? 100) * sampleRate / 1000);
    this.quiet = this.holdFrames; // frames since the last loud sample
  }

  process(inputs) {
    const input = inputs[0];
    if (input && input.length) {
      const ch = input[0];
      for (let i = 0; i < ch.length; i++) {
        if (Math.abs(ch[i]) >= this.threshold) {
          if (this.quiet >= this.holdFrames) {
            this.port.postMessage({ frame: currentFrame + i, quantumFrame: currentFrame });
          }
          this.quiet = 0;
        } else {
          this.quiet++;
        }
      }
    }
    return true;
  }
}
registerProcessor("click-probe", ClickProbe);
