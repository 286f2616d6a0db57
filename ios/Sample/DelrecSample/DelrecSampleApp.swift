import DelrecFFI
import DelrecMobile
import SwiftUI

@main
struct DelrecSampleApp: App {
    init() {
        // The runtime's and llama.cpp's log in Console.app (subsystem dev.delrec).
        OSLogSink.install(minLevel: .info)
    }

    var body: some Scene {
        WindowGroup { ContentView() }
    }
}
